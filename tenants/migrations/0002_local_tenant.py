from django.db import migrations


def create_local_tenant(apps, schema_editor):
    Tenant = apps.get_model("tenants", "Tenant")
    Tenant.objects.get_or_create(slug="local", defaults={"name": "Local"})


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [migrations.RunPython(create_local_tenant, migrations.RunPython.noop)]
