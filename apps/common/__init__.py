"""The app skeleton shared by both methods: CLI verbs, config files, run folders, checkpoints, training loop,
inference, reports. A method plugs in by subclassing :class:`apps.common.method.Method`."""
