"""Cloud-mode URLs: OIDC sign-in, the workspace pages, its API keys and members, and the admin's
sign-in through OIDC."""

from django.urls import include, path

from tenants import views

urlpatterns = [
    # Ahead of mozilla-django-oidc's own callback: a replayed or stale callback starts a fresh sign-in.
    path("oidc/callback/", views.SignInCallbackView.as_view(), name="oidc_authentication_callback"),
    # Ahead of mozilla-django-oidc's own too: signing out also closes the session's live sockets.
    path("oidc/logout/", views.SignOutView.as_view(), name="oidc_logout"),
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("admin/login/", views.staff_sign_in, name="staff_sign_in"),
    path("workspaces/", views.workspace_list, name="workspaces"),
    path("workspaces/switch/", views.workspace_switch, name="workspace_switch"),
    path("signed-out/", views.signed_out, name="signed_out"),
    path("keys/", views.api_keys, name="api_keys"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("members/", views.members, name="members"),
    path("members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
]
