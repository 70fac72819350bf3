from __future__ import annotations

from django.apps import AppConfig


class ScimConfig(AppConfig):
    name = "scim"
    label = "scim"
    verbose_name = "SCIM provisioning"

    def ready(self) -> None:
        # scim2-models checks e-mail values with email-validator, which refuses special-use
        # domains. Directories do hold addresses on ".local" (Okta's own SCIM examples use
        # okta.local): refusing them would refuse the whole user. The IdP vouches for the
        # address; nothing in Tollgate sends mail because SCIM set it. (Only scim2-models uses
        # email-validator here.)
        import email_validator

        if "local" in email_validator.SPECIAL_USE_DOMAIN_NAMES:
            email_validator.SPECIAL_USE_DOMAIN_NAMES.remove("local")
