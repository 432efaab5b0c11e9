"""Admin for pauses: pause a queue or a job type (add a pause: kind, name, reason), resume it
(delete the pause, or the "Resume" action). Both need jobs.operate, as retrying and cancelling do;
viewing needs jobs.view_pause. Through jobs.engine.pauses: the name is checked, the pauser
recorded, and a resume publishes the held jobs at once."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs.engine import pauses, registry
from jobs.interfaces.permissions import can_operate
from jobs.models import Pause


class PauseForm(forms.ModelForm):
    class Meta:
        model = Pause
        fields = ("kind", "name", "reason")
        help_texts = {"name": "a queue's name (kind queue) or a job type's (kind type)",
                      "reason": "shown as the why of its waiting jobs"}

    def clean(self) -> dict:
        data = super().clean()
        try:
            pauses.check(data.get("kind", ""), data.get("name", ""))
        except pauses.UnknownTarget as exc:
            raise forms.ValidationError({"name": str(exc)}) from None
        return data

    def validate_unique(self) -> None:  # pausing again updates the reason (pauses.pause)
        pass


@admin.action(description="Resume selected (their held jobs are published at once)", permissions=["operate"])
def resume_pauses(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Pause]) -> None:
    released = sum(pauses.resume(p.kind, p.name) or 0 for p in list(queryset))
    messages.success(request, f"Resumed; {released} held job(s) published.")


@admin.register(Pause)
class PauseAdmin(admin.ModelAdmin):
    form = PauseForm
    list_display = ("kind", "name", "reason", "paused_by", "created_at")
    actions = (resume_pauses,)
    readonly_fields = ("paused_by", "created_at")

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return can_operate(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return can_operate(request)

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return can_operate(request)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # a pause is added or removed; pausing again (add) updates its reason

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("jobs.view_job") or can_operate(request)

    def save_model(self, request: HttpRequest, obj: Pause, form: forms.ModelForm, change: bool) -> None:
        pauses.pause(obj.kind, obj.name, obj.reason, request.user.get_username())
        obj.pk = Pause.objects.get(kind=obj.kind, name=obj.name).pk

    def delete_model(self, request: HttpRequest, obj: Pause) -> None:
        released = pauses.resume(obj.kind, obj.name)
        messages.info(request, f"{obj.kind} {obj.name} resumed: {released or 0} held job(s) published.")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Pause]) -> None:
        for obj in list(queryset):
            self.delete_model(request, obj)

    def get_form(self, request: HttpRequest, obj: Pause | None = None, **kwargs: object):  # noqa: ANN201
        form = super().get_form(request, obj, **kwargs)
        # The names this code knows, as a hint under the field.
        form.base_fields["name"].help_text = (
            f"queues: {', '.join(registry.queues())}; or a job type's name")
        return form
