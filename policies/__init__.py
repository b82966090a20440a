"""The database side of pgtenant: the signed tenant context installed in PostgreSQL
(``pgtenant policies install``), table protection (``protect``), the ``check`` audit and
the tenant registry (``pgtenant tenants``)."""
