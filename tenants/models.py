from django.db import models
from django.utils import timezone

# The one tenant of OSS mode, created by migration: every OSS run belongs to it.
LOCAL_TENANT_SLUG = "local"


class Tenant(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug
