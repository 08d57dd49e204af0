"""PS3.15 security: TLS, access policy, audit, de-identification."""
