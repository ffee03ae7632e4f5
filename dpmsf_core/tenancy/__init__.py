"""Who is calling: tokens, the replay store, the tenant registry and its quotas.

``tokens`` mints and verifies the single-use encrypted tokens; ``replay`` remembers used token ids; ``model`` says
what a tenant is; ``tenants`` keeps tenant ids and their keys (the other backends in ``tenants_dynamodb``,
``tenants_firestore``, ``tenants_postgres``), wrapped at rest with the master key (``keys``); ``quotas`` are each
tenant's limits; ``state_files`` keeps the local state directory 0700 and its files 0600. The app's security layer
that builds them on first need is ``dpmsf_core.security``.

Nothing is imported here: ``from dpmsf_core.security import LazySecurity`` must not load the
cryptography or boto3 of the modules it never uses.
"""
