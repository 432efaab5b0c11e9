from django.core.mail import send_mail

try:
    from django.tasks import task
except ImportError:  # Django < 6: the backport
    from django_tasks import task


@task
def email_users(emails, subject, message):
    return send_mail(
        subject=subject, message=message, from_email=None, recipient_list=emails
    )
