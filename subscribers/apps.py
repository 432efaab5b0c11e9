from django.apps import AppConfig


class SubscribersConfig(AppConfig):
    name = "subscribers"
    verbose_name = "Events and subscribers"

    def ready(self) -> None:
        from subscribers import registry

        # Every installed app's `subscribers` module declares its subscribers.
        registry.autodiscover()
