"""Setting a service up: the wizard, response files, keys, root scripts and the
destination's `authorized_keys`. `apply.py` runs the steps in the manual's order."""
