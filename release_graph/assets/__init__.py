"""The asset graph: one module per stage, each holding its factory and its step; `service.py` assembles one
service's release from them, `fleet.py` the fleet-level assets."""
