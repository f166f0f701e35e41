"""One representative rule per iptables extension and per nft expression family.

The extension catalogue test (test_catalogue.py) loads these into a kernel in a
throw-away namespace, dumps them with the real tools and requires kpa to read
every dump. The iptables list is checked against the extensions installed on
this machine (the libxt_/libipt_/libip6t_ shared objects), so an extension that
a new iptables ships without an entry here fails the test instead of being
missed.

Like harness.py, this module does not import kpa.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

XTABLES_DIR = "/usr/lib/x86_64-linux-gnu/xtables"


@dataclass(frozen=True)
class Rep:
    """A representative rule: `-A CHAIN ARGS` in TABLE, for the families listed."""

    table: str
    chain: str
    args: str
    families: tuple[str, ...] = ("ipv4",)


# Extensions whose shared object loads in iptables but whose kernel side this
# machine does not have (or which need state the test cannot provide). The test
# requires that loading the representative really fails, so the reason stays true.
# Keyed like REPS.
UNLOADABLE_REASON = {
    "CLUSTERIP": "the kernel no longer has CLUSTERIP (removed in Linux 6.3)",
    "ULOG": "the kernel no longer has ULOG (replaced by NFLOG)",
    "SECMARK": "needs an SELinux security context the kernel knows",
    "ipvs": "the kernel has no IPVS (CONFIG_IP_VS)",
    "nfacct": "needs an nfacct object created with the nfacct tool",
    "LED": "the kernel has no LED trigger support (CONFIG_NETFILTER_XT_TARGET_LED)",
}

# Representatives whose dump kpa rejects today, and why. The catalogue test expects
# each to fail (strictly), so an entry is removed as soon as kpa reads it.
PENDING: dict[str, str] = {}
NFT_PENDING: dict[str, str] = {}

# Shared objects that provide no extension of their own name.
SO_ALIASES = {
    # libxt_NAT.so holds SNAT/DNAT revision 2 (with port shifts) and the v6 forms.
    "NAT": ("DNAT", "SNAT"),
    # libxt_standard.so is the built-in verdict target.
    "standard": ("ACCEPT",),
}

REPS: dict[str, Rep] = {
    # -- matches -----------------------------------------------------------------
    "addrtype": Rep("filter", "INPUT", "-m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT"),
    "bpf": Rep("filter", "INPUT", '-m bpf --bytecode "4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0" -j ACCEPT'),
    "cgroup": Rep("filter", "OUTPUT", "-m cgroup --path / -j ACCEPT"),
    "cluster": Rep("mangle", "PREROUTING", "-m cluster --cluster-total-nodes 2 --cluster-local-node 1 "
                   "--cluster-hash-seed 0xdeadbeef -j MARK --set-xmark 0xffff/0xffffffff"),
    "comment": Rep("filter", "INPUT", '-m comment --comment "a comment" -j ACCEPT'),
    "connbytes": Rep("filter", "FORWARD", "-m connbytes --connbytes 10000: --connbytes-dir both "
                     "--connbytes-mode bytes -j ACCEPT"),
    "connlabel": Rep("filter", "INPUT", "-m connlabel --label 1 -j ACCEPT"),
    "connlimit": Rep("filter", "INPUT", "-p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN "
                     "-m connlimit --connlimit-above 3 --connlimit-mask 32 --connlimit-saddr -j REJECT "
                     "--reject-with tcp-reset"),
    "connmark": Rep("filter", "INPUT", "-m connmark --mark 0x1/0xff -j ACCEPT"),
    "conntrack": Rep("filter", "FORWARD", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                     ("ipv4", "ipv6")),
    "cpu": Rep("filter", "INPUT", "-m cpu --cpu 0 -j ACCEPT"),
    "dccp": Rep("filter", "INPUT", "-p dccp -m dccp --dport 5000 -j ACCEPT"),
    "devgroup": Rep("filter", "INPUT", "-m devgroup --src-group 0x1 -j ACCEPT"),
    "dscp": Rep("filter", "INPUT", "-m dscp --dscp 0x2e -j ACCEPT"),
    "ecn": Rep("filter", "INPUT", "-p tcp -m ecn --ecn-tcp-cwr -j ACCEPT"),
    "esp": Rep("filter", "INPUT", "-p esp -m esp --espspi 100 -j ACCEPT"),
    "hashlimit": Rep("filter", "INPUT", "-m hashlimit --hashlimit-upto 10/sec --hashlimit-burst 5 "
                     "--hashlimit-mode srcip --hashlimit-name kpa -j ACCEPT"),
    "helper": Rep("filter", "FORWARD", '-m helper --helper "ftp" -j ACCEPT'),
    "ipcomp": Rep("filter", "INPUT", "-p ipcomp -m ipcomp --ipcompspi 100 -j ACCEPT"),
    "iprange": Rep("filter", "INPUT", "-m iprange --src-range 10.0.0.1-10.0.0.9 -j ACCEPT"),
    "ipvs": Rep("nat", "POSTROUTING", "-m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -j MASQUERADE"),
    "length": Rep("filter", "INPUT", "-m length --length 0:100 -j ACCEPT"),
    "limit": Rep("filter", "INPUT", "-m limit --limit 5/min --limit-burst 10 -j LOG"),
    "mac": Rep("filter", "INPUT", "-m mac --mac-source 02:00:00:00:00:01 -j ACCEPT"),
    "mark": Rep("filter", "INPUT", "-m mark --mark 0x4000/0x4000 -j ACCEPT", ("ipv4", "ipv6")),
    "multiport": Rep("filter", "INPUT", "-p tcp -m multiport --dports 80,443 -j ACCEPT"),
    "nfacct": Rep("filter", "INPUT", "-m nfacct --nfacct-name kpa -j ACCEPT"),
    "osf": Rep("filter", "INPUT", "-p tcp -m osf --genre Linux -j ACCEPT"),
    "owner": Rep("nat", "OUTPUT", "-p tcp -m owner --uid-owner 1337 -j RETURN", ("ipv4", "ipv6")),
    "physdev": Rep("filter", "FORWARD", "-m physdev --physdev-is-bridged -j ACCEPT"),
    "pkttype": Rep("filter", "INPUT", "-m pkttype --pkt-type multicast -j ACCEPT"),
    "policy": Rep("filter", "INPUT", "-m policy --dir in --pol none -j ACCEPT"),
    "quota": Rep("filter", "INPUT", "-m quota --quota 1000 -j ACCEPT"),
    "rateest": Rep("filter", "FORWARD", "-m rateest --rateest kpa --rateest-gt --rateest-bps 10000 -j ACCEPT"),
    "recent": Rep("filter", "INPUT", "-m recent --rcheck --seconds 60 --hitcount 3 --name kpa --mask "
                  "255.255.255.255 --rsource -j DROP"),
    "rpfilter": Rep("raw", "PREROUTING", "-m rpfilter --invert -j DROP", ("ipv4", "ipv6")),
    "sctp": Rep("filter", "INPUT", "-p sctp -m sctp --dport 9000 -j ACCEPT"),
    "set": Rep("filter", "INPUT", "-m set --match-set kpa-set src -j ACCEPT"),
    "socket": Rep("mangle", "PREROUTING", "-p tcp -m socket --transparent --nowildcard -j MARK "
                  "--set-xmark 0x1/0xffffffff"),
    "state": Rep("filter", "INPUT", "-m state --state NEW -j ACCEPT"),
    "statistic": Rep("filter", "INPUT", "-m statistic --mode random --probability 0.5 -j ACCEPT"),
    "string": Rep("filter", "INPUT", '-m string --string "GET" --algo bm --to 65535 -j ACCEPT'),
    "tcp": Rep("filter", "INPUT", "-p tcp -m tcp --dport 80 --tcp-flags SYN,RST SYN -j ACCEPT"),
    "tcpmss": Rep("filter", "INPUT", "-p tcp -m tcpmss --mss 1000:1500 -j ACCEPT"),
    "time": Rep("filter", "INPUT", "-m time --timestart 09:00:00 --timestop 17:00:00 -j ACCEPT"),
    "tos": Rep("filter", "INPUT", "-m tos --tos 0x10/0x3f -j ACCEPT"),
    "u32": Rep("filter", "INPUT", '-m u32 --u32 "0x6&0xff=0x6" -j ACCEPT'),
    "udp": Rep("filter", "INPUT", "-p udp -m udp --dport 53 -j ACCEPT"),
    # libipt_ / libip6t_ matches
    "ah": Rep("filter", "INPUT", "-p ah -m ah --ahspi 500 -j ACCEPT", ("ipv4", "ipv6")),
    "icmp": Rep("filter", "INPUT", "-p icmp -m icmp --icmp-type 8 -j ACCEPT"),
    "realm": Rep("filter", "INPUT", "-m realm --realm 0x1 -j ACCEPT"),
    "ttl": Rep("filter", "INPUT", "-m ttl --ttl-eq 64 -j ACCEPT"),
    "dst": Rep("filter", "INPUT", "-m dst --dst-len 8 -j ACCEPT", ("ipv6",)),
    "eui64": Rep("filter", "INPUT", "-m eui64 -j ACCEPT", ("ipv6",)),
    "frag": Rep("filter", "INPUT", "-m frag --fragid 1 -j ACCEPT", ("ipv6",)),
    "hbh": Rep("filter", "INPUT", "-m hbh --hbh-len 8 -j ACCEPT", ("ipv6",)),
    "hl": Rep("filter", "INPUT", "-m hl --hl-eq 64 -j ACCEPT", ("ipv6",)),
    "icmp6": Rep("filter", "INPUT", "-p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT", ("ipv6",)),
    "ipv6header": Rep("filter", "INPUT", "-m ipv6header --header frag --soft -j ACCEPT", ("ipv6",)),
    "mh": Rep("filter", "INPUT", "-p mobility-header -m mh --mh-type 1 -j ACCEPT", ("ipv6",)),
    "rt": Rep("filter", "INPUT", "-m rt --rt-type 2 -j ACCEPT", ("ipv6",)),
    "srh": Rep("filter", "INPUT", "-m srh --srh-next-hdr 17 -j ACCEPT", ("ipv6",)),
    # -- targets -----------------------------------------------------------------
    "ACCEPT": Rep("filter", "INPUT", "-j ACCEPT", ("ipv4", "ipv6")),
    "AUDIT": Rep("filter", "INPUT", "-j AUDIT --type accept"),
    "CHECKSUM": Rep("mangle", "POSTROUTING", "-p udp -m udp --dport 68 -j CHECKSUM --checksum-fill"),
    "CLASSIFY": Rep("mangle", "POSTROUTING", "-j CLASSIFY --set-class 0001:0010"),
    "CONNMARK": Rep("mangle", "PREROUTING", "-j CONNMARK --restore-mark --nfmask 0xffffffff "
                    "--ctmask 0xffffffff"),
    "CONNSECMARK": Rep("security", "INPUT", "-j CONNSECMARK --save"),
    "CT": Rep("raw", "PREROUTING", "-p udp -m udp --dport 53 -j CT --notrack", ("ipv4", "ipv6")),
    "DNAT": Rep("nat", "PREROUTING", "-p tcp -m tcp --dport 80 -j DNAT --to-destination "
                "10.0.0.1-10.0.0.3:8000-8010/80"),
    "DSCP": Rep("mangle", "PREROUTING", "-j DSCP --set-dscp 0x0a"),
    "HMARK": Rep("mangle", "PREROUTING", "-j HMARK --hmark-tuple src,dst --hmark-mod 10 "
                 "--hmark-rnd 0xfeedcafe"),
    "IDLETIMER": Rep("filter", "INPUT", "-j IDLETIMER --timeout 60 --label kpa"),
    "LED": Rep("filter", "INPUT", "-j LED --led-trigger-id kpa"),
    "LOG": Rep("filter", "INPUT", '-j LOG --log-prefix "kpa: "', ("ipv4", "ipv6")),
    "MARK": Rep("mangle", "PREROUTING", "-j MARK --set-xmark 0x4000/0x4000", ("ipv4", "ipv6")),
    "MASQUERADE": Rep("nat", "POSTROUTING", "-j MASQUERADE --random-fully", ("ipv4", "ipv6")),
    "NFLOG": Rep("filter", "INPUT", "-j NFLOG --nflog-group 100"),
    "NFQUEUE": Rep("filter", "INPUT", "-j NFQUEUE --queue-num 1 --queue-bypass"),
    "NOTRACK": Rep("raw", "PREROUTING", "-j NOTRACK"),
    "RATEEST": Rep("mangle", "PREROUTING", "-j RATEEST --rateest-name kpa --rateest-interval 250.0ms "
                   "--rateest-ewmalog 500.0ms"),
    "REDIRECT": Rep("nat", "PREROUTING", "-p tcp -j REDIRECT --to-ports 15001", ("ipv4", "ipv6")),
    "SECMARK": Rep("security", "INPUT", "-j SECMARK --selctx system_u:object_r:ssh_packet_t:s0"),
    "SET": Rep("filter", "INPUT", "-j SET --add-set kpa-set src"),
    "SNAT": Rep("nat", "POSTROUTING", "-p tcp -j SNAT --to-source 192.0.2.1:1000-2000"),
    "SYNPROXY": Rep("filter", "INPUT", "-p tcp -m tcp --dport 80 -j SYNPROXY --sack-perm --timestamp "
                    "--wscale 7 --mss 1460"),
    "TCPMSS": Rep("mangle", "FORWARD", "-p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"),
    "TCPOPTSTRIP": Rep("mangle", "PREROUTING", "-p tcp -j TCPOPTSTRIP --strip-options sack-permitted"),
    "TEE": Rep("mangle", "PREROUTING", "-j TEE --gateway 192.0.2.9"),
    "TOS": Rep("mangle", "PREROUTING", "-j TOS --set-tos 0x10/0x3f"),
    "TPROXY": Rep("mangle", "PREROUTING", "-p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 "
                  "--tproxy-mark 0x1/0x1"),
    "TRACE": Rep("raw", "PREROUTING", "-j TRACE"),
    "CLUSTERIP": Rep("filter", "INPUT", "-d 10.0.0.9/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip "
                     "--clustermac 01:00:5e:00:00:20 --total-nodes 2 --local-node 1"),
    "ECN": Rep("mangle", "PREROUTING", "-p tcp -j ECN --ecn-tcp-remove"),
    "NETMAP": Rep("nat", "PREROUTING", "-d 10.1.0.0/24 -j NETMAP --to 10.2.0.0/24"),
    "REJECT": Rep("filter", "INPUT", "-p tcp -j REJECT --reject-with tcp-reset", ("ipv4", "ipv6")),
    "TTL": Rep("mangle", "PREROUTING", "-j TTL --ttl-set 64"),
    "ULOG": Rep("filter", "INPUT", "-j ULOG --ulog-nlgroup 1"),
    "DNPT": Rep("mangle", "PREROUTING", "-d 2001:db8::/64 -j DNPT --src-pfx 2001:db8::/64 --dst-pfx "
                "fd00::/64", ("ipv6",)),
    "SNPT": Rep("mangle", "POSTROUTING", "-s fd00::/64 -j SNPT --src-pfx fd00::/64 --dst-pfx "
                "2001:db8::/64", ("ipv6",)),
    "HL": Rep("mangle", "PREROUTING", "-j HL --hl-set 64", ("ipv6",)),
}

# libipt_NETMAP/libip6t_NETMAP and libipt_REJECT/libip6t_REJECT share a name; the
# ipv6 objects are covered by the ipv6 family of the same entry.
V6_TOO = {"NETMAP", "REJECT"}


def installed_extensions(directory: str = XTABLES_DIR) -> dict[str, set[str]]:
    """Extension name -> families, from the installed shared objects."""
    out: dict[str, set[str]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "lib*t_*.so"))):
        m = re.fullmatch(r"lib(xt|ipt|ip6t)_(.+)\.so", os.path.basename(path))
        if not m:
            continue  # libebt_, libarpt_: bridge and arp tables, which kpa does not trace
        kind, name = m.groups()
        fams = {"xt": {"ipv4", "ipv6"}, "ipt": {"ipv4"}, "ip6t": {"ipv6"}}[kind]
        for n in SO_ALIASES.get(name, (name,)):
            out.setdefault(n, set()).update(fams)
    return out


# nft 1.0.6: one rule per expression family the nft grammar offers (matches and
# statements), each as `nft add rule` text for a table `inet kpacat` (or the table
# named). nft has no plug-in directory to enumerate, so this list is by hand.
NFT_TABLE = "kpacat"
NFT_REPS: dict[str, tuple[str, str]] = {
    # name: (chain kind, rule text)
    "meta l4proto": ("filter", "meta l4proto tcp accept"),
    "meta iifname": ("filter", 'iifname "eth0" accept'),
    "meta oifname": ("filter", 'oifname "eth*" accept'),
    "meta mark": ("filter", "meta mark & 0x00004000 == 0x00004000 accept"),
    "meta mark set": ("filter", "meta mark set meta mark | 0x00004000"),
    "meta skuid": ("output", "meta skuid 1337 accept"),
    "meta skgid": ("output", "meta skgid != 1337 accept"),
    "meta pkttype": ("filter", "meta pkttype multicast accept"),
    "meta cpu": ("filter", "meta cpu 0 accept"),
    "meta length": ("filter", "meta length > 1000 accept"),
    "meta secpath": ("filter", "meta secpath exists accept"),
    "meta nfproto": ("filter", "meta nfproto ipv4 accept"),
    "meta random": ("filter", "meta random & 1 == 0 accept"),
    "meta iiftype": ("filter", "meta iiftype ether accept"),
    "meta cgroup": ("output", "meta cgroup 1 accept"),
    "meta priority": ("filter", "meta priority 0001:0010 accept"),
    "meta time": ("filter", 'meta hour "09:00"-"17:00" accept'),
    "meta day": ("filter", 'meta day "Monday" accept'),
    "ct state": ("filter", "ct state established,related accept"),
    "ct status": ("filter", "ct status dnat accept"),
    "ct mark": ("filter", "ct mark 0x1 accept"),
    "ct mark set": ("filter", "ct mark set meta mark"),
    "ct direction": ("filter", "ct direction original accept"),
    "ct zone": ("filter", "ct zone 1 accept"),
    "ct label": ("filter", "ct label 1 accept"),
    "ct count": ("filter", "tcp dport 22 ct count over 3 reject"),
    "ct expiration": ("filter", "ct expiration < 10s accept"),
    "ct helper": ("filter", 'ct helper "ftp" accept'),
    "ct original saddr": ("filter", "ct original ip saddr 10.0.0.1 accept"),
    "notrack": ("raw", "udp dport 53 notrack"),
    "ip saddr": ("filter", "ip saddr 10.0.0.0/8 accept"),
    "ip6 daddr": ("filter", "ip6 daddr fd00::/8 accept"),
    "ip dscp": ("filter", "ip dscp cs1 accept"),
    "ip ttl": ("filter", "ip ttl 64 accept"),
    "ip6 hoplimit": ("filter", "ip6 hoplimit 64 accept"),
    "tcp flags": ("filter", "tcp flags & (syn | ack) == syn accept"),
    "tcp dport": ("filter", "tcp dport { 80, 443 } accept"),
    "udp sport": ("filter", "udp sport 53 accept"),
    "sctp dport": ("filter", "sctp dport 9000 accept"),
    "dccp dport": ("filter", "dccp dport 5000 accept"),
    "th dport": ("filter", "th dport 80 accept"),
    "icmp type": ("filter", "icmp type echo-request accept"),
    "icmpv6 type": ("filter", "icmpv6 type echo-request accept"),
    "ah spi": ("filter", "ah spi 500 accept"),
    "esp spi": ("filter", "esp spi 100 accept"),
    "comp cpi": ("filter", "comp cpi 100 accept"),
    "ether saddr": ("filter", "ether saddr 02:00:00:00:00:01 accept"),
    "vlan id": ("filter", "vlan id 10 accept"),
    "exthdr frag": ("filter", "frag more-fragments 1 accept"),
    "exthdr hbh": ("filter", "exthdr hbh exists accept"),
    "exthdr rt": ("filter", "rt type 2 accept"),
    "tcp option": ("filter", "tcp option maxseg size 1400 accept"),
    "raw payload": ("filter", "@th,16,16 0x50 accept"),
    "fib": ("prerouting", "fib saddr . iif oif missing drop"),
    "fib daddr type": ("filter", "fib daddr type local accept"),
    "rt nexthop": ("postrouting", "rt ip nexthop 192.0.2.1 accept"),
    "socket transparent": ("prerouting", "socket transparent 1 accept"),
    "socket mark": ("prerouting", "socket mark 0x1 accept"),
    "osf": ("filter", 'osf name "Linux" accept'),
    "ipsec": ("filter", "ipsec in reqid 1 accept"),
    "limit": ("filter", "limit rate 10/second accept"),
    "limit over": ("filter", "limit rate over 10/second drop"),
    "quota": ("filter", "quota 1000 bytes accept"),
    "counter": ("filter", "counter accept"),
    "log": ("filter", 'log prefix "kpa: " accept'),
    "reject": ("filter", "reject with icmpx port-unreachable"),
    "reject tcp": ("filter", "meta l4proto tcp reject with tcp reset"),
    "drop": ("filter", "drop"),
    "jump": ("filter", "jump sub"),
    "dnat": ("dstnat", "tcp dport 80 dnat ip to 10.0.0.1:8080"),
    "dnat range": ("dstnat", "tcp dport 81 dnat ip to 10.0.0.1-10.0.0.3:8000-8010"),
    "snat": ("srcnat", "snat ip to 192.0.2.1"),
    "masquerade": ("srcnat", "masquerade random,persistent"),
    "redirect": ("dstnat", "tcp dport 82 redirect to :15001"),
    "tproxy": ("prerouting", "meta l4proto tcp tproxy ip to 127.0.0.1:15006"),
    "synproxy": ("filter", "tcp dport 80 synproxy mss 1460 wscale 7 timestamp sack-perm"),
    "queue": ("filter", "queue num 1 bypass"),
    "numgen": ("dstnat", "tcp dport 83 dnat ip to numgen inc mod 2 map { 0 : 10.0.0.1, 1 : 10.0.0.2 }"),
    "jhash": ("filter", "meta mark set jhash ip saddr mod 2"),
    "set lookup": ("filter", "ip saddr @allowed accept"),
    "map vmap": ("filter", "ip daddr vmap { 10.0.0.1 : accept, 10.0.0.2 : drop }"),
    "dynset update": ("filter", "update @allowed { ip saddr }"),
    "meter": ("filter", "meter flood { ip saddr limit rate over 10/second } drop"),
    "ct helper set": ("prerouting", 'tcp dport 21 ct helper set "ftp-std"'),
    "counter named": ("filter", 'counter name "cnt"'),
}
