from django.apps import AppConfig


class DjTasksConfig(AppConfig):
    name = "examples.djtasks"
    label = "djtasks"
    verbose_name = "Examples (django.tasks)"
