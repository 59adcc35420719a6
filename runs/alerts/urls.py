from django.urls import path

from kahn_site.api_routes import api_path
from runs.alerts import api, views

api_urlpatterns = [
    *api_path("alerts/rules/", api.AlertRuleListApi, "api-alert-rules"),
    *api_path("alerts/rules/<int:rule_id>/", api.AlertRuleDetailApi, "api-alert-rule"),
    *api_path("alerts/rules/<int:rule_id>/test", api.AlertRuleTestApi, "api-alert-rule-test"),
    *api_path("alerts/deliveries/", api.DeliveryListApi, "api-alert-deliveries"),
]

page_urlpatterns = [
    path("alerts/", views.alerts_page, name="alerts"),
    path("alerts/<int:rule_id>/test/", views.alert_rule_test, name="alert_rule_test"),
    path("alerts/<int:rule_id>/enabled/", views.alert_rule_enabled, name="alert_rule_enabled"),
    path("alerts/<int:rule_id>/delete/", views.alert_rule_delete, name="alert_rule_delete"),
]
