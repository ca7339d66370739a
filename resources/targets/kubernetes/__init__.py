"""The kubernetes target, by concern: `objects.py` (the objects a deployment sends, and their validation against
the cluster version's schemas) and `target.py` (applying them, following the rollout, rolling back, and reading
what runs)."""
