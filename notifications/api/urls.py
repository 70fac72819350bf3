from __future__ import annotations

from rest_framework.routers import SimpleRouter

from notifications.api import views

router = SimpleRouter()
router.register("notification-channels", views.ChannelViewSet, basename="notification-channels")
router.register("notification-deliveries", views.DeliveryViewSet,
                basename="notification-deliveries")

urlpatterns = router.urls
