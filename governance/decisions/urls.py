from __future__ import annotations

app_name = "decisions"

urlpatterns: list = []
