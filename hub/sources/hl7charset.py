"""HL7 v2 character sets: MSH-18 values (HL7 table 0211) and the Python codecs that read them.

Kept apart from hub.sources.hl7v2 so region.yaml loading can check a feed's ``encoding:``
without importing the source (and its dependencies).
"""

from __future__ import annotations

import codecs

#: MSH-18 values -> Python codecs (upper-case keys; MSH-18 is compared upper-cased).
CHARSETS = {
    "ASCII": "ascii", "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/5": "iso8859-5", "8859/7": "iso8859-7",
    "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "UTF-8": "utf-8",
    "GB 18030-2000": "gb18030", "GB18030": "gb18030", "GB 18030": "gb18030", "GBK": "gbk", "GB2312": "gb2312",
    "BIG-5": "big5", "BIG5": "big5", "ISO IR87": "iso2022_jp", "KS X 1001": "euc_kr",
}


def known_encoding(name: str) -> bool:
    """True when name is an MSH-18 value or a codec Python has (a feed's ``encoding:``)."""
    if name.strip().upper() in CHARSETS:
        return True
    try:
        codecs.lookup(name.strip())
    except LookupError:
        return False
    return True
