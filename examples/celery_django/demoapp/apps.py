from django.apps import AppConfig


class DemoappConfig(AppConfig):
    name = "examples.celery_django.demoapp"
    label = "demoapp"
