import secrets
import string

import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

import billing.models
import tenants.models


def give_existing_tenants_a_prefix_and_plan(apps, schema_editor):
    # Each row needs its own prefix: a field default would give every existing row the same one.
    Tenant = apps.get_model("tenants", "Tenant")
    Plan = apps.get_model("billing", "Plan")
    db = schema_editor.connection.alias
    plan, _ = Plan.objects.using(db).get_or_create(slug="default", defaults={"name": "Default"})
    alphabet = string.ascii_lowercase + string.digits
    for tenant in Tenant.objects.using(db).filter(key_prefix__isnull=True):
        tenant.key_prefix = "".join(secrets.choice(alphabet) for _ in range(10))
        tenant.plan = plan
        tenant.save(update_fields=["key_prefix", "plan"])


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0002_default_plan"),
        ("tenants", "0002_local_tenant"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="key_prefix",
            field=models.CharField(max_length=16, null=True),
        ),
        migrations.AddField(
            model_name="tenant",
            name="plan",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="tenants", to="billing.plan"
            ),
        ),
        migrations.RunPython(give_existing_tenants_a_prefix_and_plan, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="tenant",
            name="key_prefix",
            field=models.CharField(
                default=tenants.models.key_prefix_random,
                help_text="public: names the tenant in its API keys (kahn_live_sk_<prefix>_<secret>)",
                max_length=16,
                unique=True,
                validators=[
                    django.core.validators.RegexValidator("^[a-z0-9]{6,16}$", "6 to 16 lowercase letters and digits.")
                ],
            ),
        ),
        migrations.AlterField(
            model_name="tenant",
            name="plan",
            field=models.ForeignKey(
                default=billing.models.plan_default_id,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="tenants",
                to="billing.plan",
            ),
        ),
        migrations.AddConstraint(
            model_name="tenant",
            constraint=models.CheckConstraint(
                condition=models.Q(("key_prefix__regex", "^[a-z0-9]{6,16}$")), name="tenant_key_prefix_format"
            ),
        ),
        migrations.CreateModel(
            name="Identity",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("sub", models.CharField(max_length=255, unique=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="identity",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"verbose_name_plural": "identities"},
        ),
        migrations.CreateModel(
            name="Membership",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "role",
                    models.CharField(
                        choices=[("owner", "Owner"), ("admin", "Admin"), ("member", "Member")],
                        default="member",
                        max_length=10,
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="memberships", to="tenants.tenant"
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="memberships",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["created_at", "id"],
                "constraints": [models.UniqueConstraint(fields=("user", "tenant"), name="membership_unique")],
            },
        ),
        migrations.CreateModel(
            name="StaffAccess",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("at", models.DateTimeField(default=django.utils.timezone.now)),
                ("actor", models.CharField(help_text="a user (email and id) or a command", max_length=200)),
                ("tenant_ref", models.BigIntegerField(help_text="the tenant's id")),
                ("tenant_slug", models.SlugField()),
                ("reason", models.CharField(max_length=300)),
            ],
            options={"ordering": ["-at", "-id"], "verbose_name_plural": "staff accesses"},
        ),
    ]
