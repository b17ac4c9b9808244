-- A bcrypt hash of each agent's password beside its `$7$` one, for brokers that take only
-- bcrypt (nats-server: `ferry-controller nats-files`). Instances made before this have none
-- until their password is rotated (`instance add --rotate`).
ALTER TABLE instances ADD COLUMN bcrypt_hash TEXT;
