-- The newest agent connection each instance's presence came from (unix ms at the agent's
-- CONNECT, `Presence.Connection`): a broker may publish a dropped connection's last will
-- after the agent's next connection said it is online, and that late will must not mark
-- the instance offline. 0: none seen (agents before this send none).
ALTER TABLE instances ADD COLUMN presence_connection BIGINT NOT NULL DEFAULT 0;
