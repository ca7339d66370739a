"""The kubernetes target, by concern: `objects.py` (the objects a deployment sends, and their validation against
the cluster version's schemas). Applying them, following the rollout and rolling back are not built yet (issue 12)."""
