"""nftables expressions, one module per family (payload, meta, ct, fib, numgen, lookup, ...).

Readers in kpa.parse build these from `nft list ruleset` text or JSON; each
carries its own symbolic semantics, like the iptables extensions in kpa.ext.
"""
