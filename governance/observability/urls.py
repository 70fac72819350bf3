from __future__ import annotations

app_name = "observability"

urlpatterns: list = []
