"""Render the IR back to iptables-save syntax (used for round trips and display)."""

from __future__ import annotations

from kpa.netfilter.model import IPTABLES_TABLES, Rule, Ruleset, Table

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:,=+@[]!%#*")


def quote(token: str) -> str:
    if token and all(c in _SAFE for c in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_rule(rule: Rule) -> str:
    tokens: list[str] = []
    for e in rule.exprs:
        tokens.extend(e.render())
    # Only option values may need quoting; option names never do.
    return " ".join(["-A", rule.chain, *(t if t.startswith("-") and " " not in t else quote(t) for t in tokens)])


def render_table(table: Table) -> str:
    lines = [f"*{table.name}"]
    for c in table.chains.values():
        policy = c.policy if c.is_base else "-"
        pk, by = c.counters or (0, 0)
        lines.append(f":{c.name} {policy} [{pk}:{by}]")
    for c in table.chains.values():
        lines.extend(render_rule(r) for r in c.rules)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_ruleset(rs: Ruleset) -> str:
    order = {name: i for i, name in enumerate(IPTABLES_TABLES)}
    tables = sorted((t for t in rs.tables if t.name in order), key=lambda t: order[t.name])
    return "".join(render_table(t) for t in tables)
