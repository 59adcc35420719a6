from django.db import migrations


def create_default_plan(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    Plan.objects.using(schema_editor.connection.alias).get_or_create(
        slug="default", defaults={"name": "Default"}
    )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_plan")]

    operations = [migrations.RunPython(create_default_plan, migrations.RunPython.noop)]
