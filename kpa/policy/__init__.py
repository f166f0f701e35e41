"""NetworkPolicy intent: what the cluster's policies allow, from Kubernetes objects alone.

`PolicyEngine.decide` judges one connection and explains it; `matrix` judges many at
once by grouping pods that policies cannot tell apart; `services` judges a Service
destination per endpoint, after kube-proxy's DNAT; `lint` finds policy mistakes.
"""

from kpa.policy.engine import (
    Decision,
    Direction,
    DirectionVerdict,
    Miss,
    PolicyEngine,
    RuleRef,
    Subject,
)

__all__ = [
    "Decision",
    "Direction",
    "DirectionVerdict",
    "Miss",
    "PolicyEngine",
    "RuleRef",
    "Subject",
]
