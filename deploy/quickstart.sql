-- The quick start's demo table (deploy/quickstart.sh; also the console's todo app test,
-- tests/it/console_todos.rs). Client-generated UUID keys, so the console's todo app (and any
-- offline client) can insert a row before the server has seen it.
CREATE TABLE todos (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO todos (title) VALUES ('Try deltarelay'), ('Write the client');
