"""IP protocol names and numbers as iptables 1.8 and nft print and accept them.

Both tools print a protocol number through the C library's protocol database
(`getprotobynumber`, i.e. /etc/protocols of the machine that made the dump),
and iptables first looks in its own short table (libxtables'
`xtables_chain_protos`: tcp, udp, icmp, ipv6-icmp, mh...). A dump made on
one machine must read on any other, so kpa never consults this host's
database: it carries the names the common protocol databases hold — Debian's
netbase and the full IANA list that Red Hat's `setup` package ships — and
accepts any of them. Where the two disagree on a number's first name (4 is
`ipencap` in netbase and `ipv4` in the IANA list; 73 is `rspf` or `cphb`)
both names are known, and no name means two different numbers.

Numbers are read as C's `strtoul(s, NULL, 0)` reads them (both tools call
it): decimal, `0x` hex, and a leading `0` means octal (`010` is 8).
"""

from __future__ import annotations

from kpa.netfilter.model import Family

# Primary (lower-case) names, by number: netbase first, then the IANA list's own name where it differs.
_NAMES: dict[int, tuple[str, ...]] = {
    0: ("ip", "hopopt"), 1: ("icmp",), 2: ("igmp",), 3: ("ggp",), 4: ("ipencap", "ipv4"), 5: ("st",),
    6: ("tcp",), 7: ("cbt",), 8: ("egp",), 9: ("igp",), 10: ("bbn-rcc-mon",), 11: ("nvp-ii",), 12: ("pup",),
    13: ("argus",), 14: ("emcon",), 15: ("xnet",), 16: ("chaos",), 17: ("udp",), 18: ("mux",),
    19: ("dcn-meas",), 20: ("hmp",), 21: ("prm",), 22: ("xns-idp",), 23: ("trunk-1",), 24: ("trunk-2",),
    25: ("leaf-1",), 26: ("leaf-2",), 27: ("rdp",), 28: ("irtp",), 29: ("iso-tp4",), 30: ("netblt",),
    31: ("mfe-nsp",), 32: ("merit-inp",), 33: ("dccp",), 34: ("3pc",), 35: ("idpr",), 36: ("xtp",),
    37: ("ddp",), 38: ("idpr-cmtp",), 39: ("tp++",), 40: ("il",), 41: ("ipv6",), 42: ("sdrp",),
    43: ("ipv6-route",), 44: ("ipv6-frag",), 45: ("idrp",), 46: ("rsvp",), 47: ("gre",), 48: ("dsr",),
    49: ("bna",), 50: ("esp", "ipv6-crypt"), 51: ("ah", "ipv6-auth"), 52: ("i-nlsp",), 53: ("swipe",),
    54: ("narp",), 55: ("mobile",), 56: ("tlsp",), 57: ("skip",), 58: ("ipv6-icmp",), 59: ("ipv6-nonxt",),
    60: ("ipv6-opts",), 62: ("cftp",), 64: ("sat-expak",), 65: ("kryptolan",), 66: ("rvd",), 67: ("ippc",),
    69: ("sat-mon",), 70: ("visa",), 71: ("ipcv",), 72: ("cpnx",), 73: ("rspf", "cphb"), 74: ("wsn",),
    75: ("pvp",), 76: ("br-sat-mon",), 77: ("sun-nd",), 78: ("wb-mon",), 79: ("wb-expak",), 80: ("iso-ip",),
    81: ("vmtp",), 82: ("secure-vmtp",), 83: ("vines",), 84: ("ttp", "iptm"), 85: ("nsfnet-igp",),
    86: ("dgp",), 87: ("tcf",), 88: ("eigrp",), 89: ("ospf", "ospfigp"), 90: ("sprite-rpc",), 91: ("larp",),
    92: ("mtp",), 93: ("ax.25",), 94: ("ipip",), 95: ("micp",), 96: ("scc-sp",), 97: ("etherip",),
    98: ("encap",), 100: ("gmtp",), 101: ("ifmp",), 102: ("pnni",), 103: ("pim",), 104: ("aris",),
    105: ("scps",), 106: ("qnx",), 107: ("a/n",), 108: ("ipcomp",), 109: ("snp",), 110: ("compaq-peer",),
    111: ("ipx-in-ip",), 112: ("vrrp",), 113: ("pgm",), 115: ("l2tp",), 116: ("ddx",), 117: ("iatp",),
    118: ("stp",), 119: ("srp",), 120: ("uti",), 121: ("smp",), 122: ("sm",), 123: ("ptp",), 124: ("isis",),
    125: ("fire",), 126: ("crtp",), 127: ("crudp",), 128: ("sscopmce",), 129: ("iplt",), 130: ("sps",),
    131: ("pipe",), 132: ("sctp",), 133: ("fc",), 134: ("rsvp-e2e-ignore",), 135: ("mobility-header",),
    136: ("udplite",), 137: ("mpls-in-ip",), 138: ("manet",), 139: ("hip",), 140: ("shim6",), 141: ("wesp",),
    142: ("rohc",), 143: ("ethernet",), 144: ("aggfrag",), 145: ("nsh",),
}
# The databases' aliases (their second column), matched as written: getprotobyname is case-sensitive.
_ALIASES: dict[str, int] = {
    "IP": 0, "HOPOPT": 0, "ICMP": 1, "IGMP": 2, "GGP": 3, "IP-ENCAP": 4, "IPv4": 4, "ST": 5, "TCP": 6,
    "CBT": 7, "EGP": 8, "IGP": 9, "BBN-RCC-MON": 10, "NVP-II": 11, "PUP": 12, "ARGUS": 13, "EMCON": 14,
    "XNET": 15, "CHAOS": 16, "UDP": 17, "MUX": 18, "DCN-MEAS": 19, "HMP": 20, "PRM": 21, "XNS-IDP": 22,
    "TRUNK-1": 23, "TRUNK-2": 24, "LEAF-1": 25, "LEAF-2": 26, "RDP": 27, "IRTP": 28, "ISO-TP4": 29,
    "NETBLT": 30, "MFE-NSP": 31, "MERIT-INP": 32, "DCCP": 33, "3PC": 34, "IDPR": 35, "XTP": 36, "DDP": 37,
    "IDPR-CMTP": 38, "TP++": 39, "IL": 40, "IPv6": 41, "SDRP": 42, "IPv6-Route": 43, "IPv6-Frag": 44,
    "IDRP": 45, "RSVP": 46, "GRE": 47, "DSR": 48, "BNA": 49, "IPSEC-ESP": 50, "ESP": 50, "IPv6-Crypt": 50,
    "IPSEC-AH": 51, "AH": 51, "IPv6-Auth": 51, "I-NLSP": 52, "SWIPE": 53, "NARP": 54, "MOBILE": 55,
    "TLSP": 56, "SKIP": 57, "IPv6-ICMP": 58, "IPv6-NoNxt": 59, "IPv6-Opts": 60, "CFTP": 62, "SAT-EXPAK": 64,
    "KRYPTOLAN": 65, "RVD": 66, "IPPC": 67, "SAT-MON": 69, "VISA": 70, "IPCV": 71, "CPNX": 72, "RSPF": 73,
    "CPHB": 73, "WSN": 74, "PVP": 75, "BR-SAT-MON": 76, "SUN-ND": 77, "WB-MON": 78, "WB-EXPAK": 79,
    "ISO-IP": 80, "VMTP": 81, "SECURE-VMTP": 82, "VINES": 83, "TTP": 84, "IPTM": 84, "NSFNET-IGP": 85,
    "DGP": 86, "TCF": 87, "EIGRP": 88, "OSPFIGP": 89, "Sprite-RPC": 90, "LARP": 91, "MTP": 92, "AX.25": 93,
    "IPIP": 94, "MICP": 95, "SCC-SP": 96, "ETHERIP": 97, "ENCAP": 98, "GMTP": 100, "IFMP": 101, "PNNI": 102,
    "PIM": 103, "ARIS": 104, "SCPS": 105, "QNX": 106, "A/N": 107, "IPCOMP": 108, "IPComp": 108, "SNP": 109,
    "Compaq-Peer": 110, "IPX-in-IP": 111, "VRRP": 112, "PGM": 113, "L2TP": 115, "DDX": 116, "IATP": 117,
    "STP": 118, "SRP": 119, "UTI": 120, "SMP": 121, "SM": 122, "PTP": 123, "ISIS": 124, "FIRE": 125,
    "CRTP": 126, "CRUDP": 127, "SSCOPMCE": 128, "IPLT": 129, "SPS": 130, "PIPE": 131, "SCTP": 132, "FC": 133,
    "RSVP-E2E-IGNORE": 134, "Mobility-Header": 135, "UDPLite": 136, "MPLS-in-IP": 137, "HIP": 139,
    "Shim6": 140, "WESP": 141, "ROHC": 142, "Ethernet": 143, "AGGFRAG": 144, "NSH": 145,
}
# libxtables' own table (xtables_chain_protos), consulted by iptables besides the database.
XTABLES_PROTOS: dict[str, int] = {"tcp": 6, "sctp": 132, "udp": 17, "udplite": 136, "icmp": 1, "ipv6-icmp": 58,
                                  "icmpv6": 58, "esp": 50, "ah": 51, "ipv6-mh": 135, "mh": 135, "all": 0}

PROTOCOL_NUMBERS: dict[str, int] = {name: num for num, names in _NAMES.items() for name in names}
# The name the tools print for a number: xtables' table first (iptables), then the database's first name.
PRINTED: dict[int, str] = {num: names[0] for num, names in _NAMES.items()}


class BadNumber(ValueError):
    """Text that C's strtoul (as iptables and nft use it) does not read as a number in range."""


def c_uint(text: str, maximum: int, sign: bool = False) -> int:
    """`text` read as `strtoul(text, &end, 0)` with `*end == 0` required, as iptables and nft read numbers.

    Decimal, `0x` hex, or octal after a leading 0; ASCII digits only, no `_`.
    `sign` allows one leading `+` (libxtables' strtoui does; nft's scanner does not).
    """
    s = text
    if sign and s.startswith("+"):
        s = s[1:]
    if not s or not s.isascii():
        raise BadNumber(text)
    try:
        if s[:2] in ("0x", "0X"):
            if len(s) == 2 or not all(c in "0123456789abcdefABCDEF" for c in s[2:]):
                raise BadNumber(text)
            value = int(s[2:], 16)
        elif s[0] == "0" and len(s) > 1:
            if not all(c in "01234567" for c in s):
                raise BadNumber(text)
            value = int(s, 8)
        else:
            if not s.isdigit():
                raise BadNumber(text)
            value = int(s)
    except ValueError:
        raise BadNumber(text) from None
    if value > maximum:
        raise BadNumber(text)
    return value


def iptables_protocol(text: str) -> int:
    """The number for `-p TEXT` as iptables 1.8 reads it (it lower-cases the argument first).

    Raises ValueError for a name neither libxtables nor any common protocol database knows.
    """
    s = text.lower()
    try:
        return c_uint(s, 255, sign=True)
    except BadNumber:
        pass
    if s == "all":
        return 0
    num = PROTOCOL_NUMBERS.get(s, XTABLES_PROTOS.get(s))
    if num is None:
        # getprotobyname also matches aliases; after lower-casing only all-lower-case aliases remain.
        num = _ALIASES.get(s)
    if num is None:
        raise ValueError(f"unknown protocol {text!r}")
    return num


def nft_protocol(text: str) -> int:
    """The number for an `inet_proto` value as nft 1.0 reads it: a number, or a database name or alias."""
    try:
        return c_uint(text, 255)
    except BadNumber:
        pass
    num = PROTOCOL_NUMBERS.get(text, _ALIASES.get(text))
    if num is None:
        raise ValueError(f"unknown protocol {text!r}")
    return num


def protocol_name(number: int) -> str:
    """A readable name for a protocol number (for kpa's own output)."""
    return PRINTED.get(number, str(number))


def family_icmp(family: Family) -> int:
    return 58 if family is Family.IPV6 else 1


__all__ = ["PROTOCOL_NUMBERS", "BadNumber", "c_uint", "iptables_protocol", "nft_protocol", "protocol_name"]
