"""Plugin loading: find modules in folders (``discovery``), decide and publish what each serves (``registry``,
``snapshot``), notice changes (``watch``), and the packaged shortcuts (``manifest``, ``deferred``, ``tenant_index``)."""
