from django.core.mail import send_mail

try:
    from django.tasks import task
except ImportError:  # Django < 6: the backport
    from django_tasks import task


@task(takes_context=True)
def email_users(context, emails, subject, message):
    print(
        f"Attempt {context.attempt} to send user email. Task result id: {context.task_result.id}."
    )

    return send_mail(
        subject=subject, message=message, from_email=None, recipient_list=emails
    )
