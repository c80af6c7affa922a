"""Files → plain text with well-kept parsers (pypdf, python-docx, BeautifulSoup), one error per file.

Every failure is a :class:`BadDocumentError` with a reason a person can act on (encrypted PDF,
not UTF-8, binary junk, empty); ingestion reports it for that file and carries on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .errors import BadDocumentError

_BLOCKS = [
    "p", "div", "section", "article", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
    "pre", "blockquote", "table", "tr", "br", "hr", "dd", "dt", "figcaption", "header", "footer",
]  # fmt: skip
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def tidy(text: str) -> str:
    """One space between words, paragraphs separated by exactly one blank line."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BadDocumentError("binary data, not text")
    for bom, encoding in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadDocumentError(
            f"not valid UTF-8 (byte {error.start}); convert the file to UTF-8 first"
        ) from None


def parse_text(path: Path) -> str:
    return decode_text(path.read_bytes())


def parse_html(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_bytes(), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    # block elements end a paragraph; inline ones (a, b, span) stay inside their sentence
    for tag in soup.find_all(_BLOCKS):
        tag.insert_after("\n\n")
    return soup.get_text()


def parse_pdf(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadDocumentError("encrypted PDF (a password is needed)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except BadDocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as error:
        raise BadDocumentError(f"unreadable PDF: {error}") from None
    except Exception as error:  # pypdf raises assorted errors (and needs crypto libs) on odd files
        if "encrypt" in str(error).lower() or "AES" in str(error):
            raise BadDocumentError("encrypted PDF that cannot be opened") from None
        raise BadDocumentError(f"unreadable PDF: {error}") from None
    text = "\n\n".join(pages)
    if not text.strip():
        raise BadDocumentError("the PDF has no extractable text (scanned pages need OCR first)")
    return text


def parse_docx(path: Path) -> str:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as error:
        raise BadDocumentError(f"not a readable .docx file: {error}") from None
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n\n".join(parts)


PARSERS: dict[str, Callable[[Path], str]] = {
    ".txt": parse_text,
    ".text": parse_text,
    ".md": parse_text,  # markdown is indexed as its text: the markup is short and harmless
    ".markdown": parse_text,
    ".rst": parse_text,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
}


def parse_file(path: Path) -> str:
    parser = PARSERS.get(path.suffix.lower())
    if parser is None:
        raise BadDocumentError(f"unsupported file type {path.suffix or '(none)'!r}")
    try:
        text = tidy(parser(path))
    except OSError as error:
        raise BadDocumentError(f"cannot read the file: {error.strerror or error}") from None
    if not text:
        raise BadDocumentError("the file is empty")
    return text
