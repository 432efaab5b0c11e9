from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "API tokens"

    def ready(self) -> None:
        from corsheaders.signals import check_request_enabled

        from api import cors

        check_request_enabled.connect(cors.allow, dispatch_uid="conveyor-cors-families")
