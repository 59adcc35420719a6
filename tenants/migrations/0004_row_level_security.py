from django.db import migrations

from tenants.rls import AddPreTenantLookupPolicy, EnableTenantRowLevelSecurity


class Migration(migrations.Migration):
    # PostgreSQL only (the operations do nothing on SQLite); see tenants/rls.py.

    dependencies = [
        ("tenants", "0003_tenancy"),
        ("runs", "0002_log_size_seen"),
    ]

    operations = [
        EnableTenantRowLevelSecurity("runs.Run"),
        EnableTenantRowLevelSecurity("runs.Event"),
        EnableTenantRowLevelSecurity("runs.Diagnostic"),
        EnableTenantRowLevelSecurity("runs.RunNode"),
        EnableTenantRowLevelSecurity("tenants.Membership"),
        # Before a tenant is chosen, a user may read (never write) their own memberships.
        AddPreTenantLookupPolicy("tenants.Membership", "membership_of_current_user", "user", "kahn.user_id"),
    ]
