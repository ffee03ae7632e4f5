"""Plugin uploads over ``/rest/admin/plugins/<name>``: the handler, what an upload must be, and where it is stored.

``handler`` serves the admin routes (who may upload, read and delete what); ``validation`` checks an upload and
stamps its tenant; ``stores`` writes it to a folder or an S3 prefix. Nothing is imported here: a server without
uploads pays nothing.
"""
