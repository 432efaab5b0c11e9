from django.apps import AppConfig


class SubscribersConfig(AppConfig):
    name = "subscribers"
    verbose_name = "Events and subscribers"

    def ready(self) -> None:
        from jobs.interfaces import operations
        from subscribers import registry
        from subscribers.operations import recent_events

        # Every installed app's `subscribers` module declares its subscribers.
        registry.autodiscover()
        # The operations page shows recent events through this hook (jobs never imports us).
        operations.add_section("events", "subscribers.view_event", recent_events)
        # `manage.py why delivery:<id>`: a delivery waiting for its key's lane has no job yet.
        from jobs.engine import why
        from subscribers.why import delivery_why

        why.add_source("delivery", delivery_why)
