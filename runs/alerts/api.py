"""The alerts API (SPEC section 12): rules, their test, and the deliveries list.

Writes are for the tenant's owners and admins (anyone in OSS); GETs also for an API key with the
scope `read`. A rule's body is checked by `runs.alerts.services.rule_spec_parse`, which the Alerts
page shares; an invalid one is a 400 `invalid_rule` with SPEC section 11's field list.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from kahn_site.api_errors import ApiError, InvalidQuery, api_error_from
from runs.alerts import selectors, services
from runs.alerts.encryption import EncryptionKeyMissing
from runs.alerts.models import AlertRule, Condition, DeliveryAttempt, Notification, NotificationStatus
from runs.alerts.presentation import rule_data
from tenants.context import tenant_current


class RuleNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "rule_not_found"


class EncryptionNotConfigured(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "encryption_not_configured"


class ManagersOnly(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class ManagesAlerts(BasePermission):
    """Owners and admins of the tenant (in cloud mode); an API key is checked by its scopes
    (HasScope: `read` for GETs, no write)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not settings.CLOUD or getattr(request._request, "api_key", None) is not None:
            return True
        if not request.user.is_authenticated:
            # A machine client's access token: reads only, like a `read` key.
            if request.method in SAFE_METHODS:
                return True
            raise ManagersOnly("alert rules are changed by the organization's owners and admins")
        membership = getattr(request._request, "membership", None)
        if membership is None or not membership.manages_tenant:
            raise ManagersOnly("alert rules are the organization's owners' and admins' to see and change")
        return True


# The site's own (a tenant, an API key's scopes), then the role.
PERMISSIONS = [*api_settings.DEFAULT_PERMISSION_CLASSES, ManagesAlerts]


RULE_BODY = inline_serializer(
    "AlertRuleBody",
    {
        "name": serializers.CharField(max_length=100),
        "condition": serializers.ChoiceField(choices=Condition.choices),
        "filter": inline_serializer(
            "AlertRuleFilter",
            {"run_id": serializers.CharField(required=False), "node": serializers.CharField(required=False)},
            required=False,
        ),
        "params": inline_serializer(
            "AlertRuleParams",
            {
                "factor": serializers.FloatField(required=False),
                "window": serializers.IntegerField(required=False),
                "threshold": serializers.FloatField(required=False),
            },
            required=False,
        ),
        "channel": inline_serializer(
            "AlertRuleChannel",
            {
                "kind": serializers.ChoiceField(choices=["webhook", "slack", "email"]),
                "url": serializers.URLField(required=False, help_text="webhook and slack; write-only"),
                "to": serializers.ListField(child=serializers.EmailField(), required=False),
            },
        ),
        "enabled": serializers.BooleanField(required=False),
        "cooldown_s": serializers.IntegerField(required=False),
    },
)
RULE = inline_serializer(
    "AlertRule",
    {
        "id": serializers.IntegerField(),
        "name": serializers.CharField(),
        "condition": serializers.CharField(),
        "filter": serializers.DictField(),
        "params": serializers.DictField(),
        "channel": serializers.DictField(help_text="kind, and `to` for email; never a URL or a secret"),
        "enabled": serializers.BooleanField(),
        "cooldown_s": serializers.IntegerField(),
        "created_at": serializers.DateTimeField(),
        "secret": serializers.CharField(required=False, help_text="a webhook's signing secret, shown once"),
    },
)
ERROR = inline_serializer("AlertsError", {"error": serializers.DictField()})
RULE_ID = OpenApiParameter("rule_id", OpenApiTypes.INT, OpenApiParameter.PATH)


def _rule_or_404(rule_id: int) -> AlertRule:
    rule = selectors.rule_get(tenant=tenant_current(), rule_id=rule_id)
    if rule is None:
        raise RuleNotFound(f"there is no alert rule {rule_id}", details={"rule_id": rule_id})
    return rule


def _spec(request: Request, existing: AlertRule | None = None) -> services.RuleSpec:
    try:
        return services.rule_spec_parse(request.data, existing=existing)
    except services.RuleInvalid as exc:
        raise api_error_from(exc) from None


def _stored(store: Any, **kwargs: Any) -> tuple[AlertRule, str | None]:
    try:
        return store(tenant=tenant_current(), **kwargs)
    except EncryptionKeyMissing as exc:
        raise EncryptionNotConfigured(str(exc)) from None


def _answer(rule: AlertRule, secret: str | None, status_code: int = 200) -> Response:
    data = rule_data(rule)
    if secret is not None:
        data["secret"] = secret
    return Response(data, status=status_code)


class AlertRuleListApi(APIView):
    permission_classes = PERMISSIONS

    @extend_schema(operation_id="alert_rules_list", responses={200: RULE, 403: ERROR}, summary="Alert rules")
    def get(self, request: Request) -> Response:
        return Response([rule_data(rule) for rule in selectors.rule_list(tenant=tenant_current())])

    @extend_schema(
        operation_id="alert_rules_create",
        request=RULE_BODY,
        responses={201: RULE, 400: ERROR, 403: ERROR},
        summary="Make an alert rule (a webhook's secret is in this answer only)",
    )
    def post(self, request: Request) -> Response:
        rule, secret = _stored(services.rule_create, spec=_spec(request))
        return _answer(rule, secret, status.HTTP_201_CREATED)


class AlertRuleDetailApi(APIView):
    permission_classes = PERMISSIONS

    @extend_schema(operation_id="alert_rules_get", parameters=[RULE_ID], responses={200: RULE, 404: ERROR})
    def get(self, request: Request, rule_id: int) -> Response:
        return Response(rule_data(_rule_or_404(rule_id)))

    @extend_schema(
        operation_id="alert_rules_change",
        parameters=[RULE_ID],
        request=RULE_BODY,
        responses={200: RULE, 400: ERROR, 404: ERROR},
        summary="Change an alert rule (what the body leaves out is kept)",
    )
    def patch(self, request: Request, rule_id: int) -> Response:
        rule = _rule_or_404(rule_id)
        rule, secret = _stored(services.rule_update, rule=rule, spec=_spec(request, rule))
        return _answer(rule, secret)

    @extend_schema(operation_id="alert_rules_delete", parameters=[RULE_ID], responses={204: None, 404: ERROR})
    def delete(self, request: Request, rule_id: int) -> Response:
        services.rule_delete(tenant=tenant_current(), rule=_rule_or_404(rule_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AlertRuleTestApi(APIView):
    permission_classes = PERMISSIONS

    @extend_schema(
        operation_id="alert_rules_test",
        parameters=[RULE_ID],
        request=None,
        responses={202: inline_serializer("AlertTest", {"notification": serializers.IntegerField()})},
        summary="Send a test notification through the rule's channel",
    )
    def post(self, request: Request, rule_id: int) -> Response:
        notification = services.rule_send_test(tenant=tenant_current(), rule=_rule_or_404(rule_id))
        return Response({"notification": notification.pk}, status=status.HTTP_202_ACCEPTED)


class DeliveryCursorPagination(CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    # Ids grow with time: newest first, with no ties.
    ordering = "-id"

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            return super().decode_cursor(request)
        except NotFound as exc:
            raise InvalidQuery(
                "the cursor is not one this API gave",
                details={"errors": [{"index": None, "field": "cursor", "message": "Invalid cursor."}]},
            ) from exc


def delivery_data(notification: Notification) -> dict[str, Any]:
    attempts: list[DeliveryAttempt] = list(notification.delivery_attempts.all())
    return {
        "id": notification.pk,
        "webhook_id": notification.webhook_id,
        "type": notification.type,
        "rule": {"id": notification.rule_id, "name": notification.rule.name},
        "run_id": notification.run_id or None,
        "node": notification.node or None if notification.type != "test" else None,
        "created_at": notification.created_at.isoformat(),
        "status": notification.status,
        "next_attempt_at": notification.next_attempt_at.isoformat() if notification.next_attempt_at else None,
        "attempts": [
            {
                "at": a.at.isoformat(),
                "status_code": a.status_code,
                "error": a.error or None,
                "delivered": a.delivered,
            }
            for a in attempts
        ],
    }


class DeliveryListApi(APIView):
    pagination_class = DeliveryCursorPagination

    class InputSerializer(serializers.Serializer):
        rule = serializers.IntegerField(required=False, min_value=1)
        run_id = serializers.CharField(required=False, max_length=64)
        status = serializers.ChoiceField(choices=NotificationStatus.choices, required=False)
        page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)
        cursor = serializers.CharField(required=False)

    permission_classes = PERMISSIONS

    @extend_schema(
        operation_id="alert_deliveries_list",
        parameters=[InputSerializer(partial=True)],
        responses={200: inline_serializer("AlertDelivery", {"id": serializers.IntegerField()}), 400: ERROR},
        summary="Notifications and every attempt to deliver them, newest first",
    )
    def get(self, request: Request) -> Response:
        query = self.InputSerializer(data=request.query_params)
        if not query.is_valid():
            raise InvalidQuery.from_serializer_errors(query.errors)
        tenant = tenant_current()
        filters = {k: v for k, v in query.validated_data.items() if k in ("rule", "run_id", "status")}
        notifications: QuerySet[Notification] = selectors.notification_list(
            tenant=tenant, **filters
        ).prefetch_related(
            Prefetch(
                "delivery_attempts",
                queryset=DeliveryAttempt.objects.filter(tenant=tenant).order_by("-at", "-id"),
            )
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(notifications, request, self) or []
        return paginator.get_paginated_response([delivery_data(n) for n in page])
