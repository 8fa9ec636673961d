"""Method wiring: each module exposes ``SPEC``, a :class:`~fedvq_app.registry.MethodSpec`."""
