-- A journal file as gridctl wrote it before the warehouse and loads tables joined the
-- journal's migrations (user_version 4; wh_* from WAREHOUSE_SCHEMA, ld_* from the loads'
-- own install with ld_meta = 3): the schema and a few rows, dumped with iterdump().
BEGIN TRANSACTION;
CREATE TABLE alarms (
            key           TEXT PRIMARY KEY,  -- condition:source
            condition     TEXT NOT NULL,
            source        TEXT NOT NULL,
            severity      INTEGER NOT NULL,
            active        INTEGER NOT NULL,
            acked         INTEGER NOT NULL,
            shelved_until REAL,
            shelved_by    TEXT,
            message       TEXT NOT NULL DEFAULT '',
            raised_at     REAL,
            cleared_at    REAL,
            acked_at      REAL,
            acked_by      TEXT,
            ack_note      TEXT,
            updated       REAL NOT NULL
        );
CREATE TABLE command_transitions (
            seq        INTEGER PRIMARY KEY,
            command_id TEXT NOT NULL REFERENCES commands(id),
            state      TEXT NOT NULL,
            reason     TEXT NOT NULL DEFAULT '',
            who        TEXT NOT NULL,
            at         REAL NOT NULL
        );
CREATE TABLE commands (
            id       TEXT PRIMARY KEY,
            kind     TEXT NOT NULL,
            target   TEXT NOT NULL,
            args     BLOB NOT NULL,          -- msgpack
            who      TEXT NOT NULL,
            why      TEXT NOT NULL,
            state    TEXT NOT NULL,
            reason   TEXT NOT NULL DEFAULT '',
            created  REAL NOT NULL,          -- epoch seconds
            updated  REAL NOT NULL,
            expires  REAL                    -- epoch seconds, NULL = no expiry
        );
CREATE TABLE events (
            seq      INTEGER PRIMARY KEY,
            at       REAL NOT NULL,
            kind     TEXT NOT NULL,          -- alarm, command, service, ...
            source   TEXT NOT NULL,
            severity INTEGER NOT NULL DEFAULT 0,
            message  TEXT NOT NULL,
            data     BLOB                    -- msgpack or NULL
        );
CREATE TABLE ld_accounts (
        id           TEXT PRIMARY KEY,
        balance      TEXT NOT NULL,      -- decimal text
        last_reading TEXT,               -- kWh, decimal text
        last_at      REAL,
        tripped      INTEGER NOT NULL DEFAULT 0,
        alarm_sent   INTEGER NOT NULL DEFAULT 0,
        updated      REAL NOT NULL
    , last_registers TEXT);
INSERT INTO "ld_accounts" VALUES('acc1','12.50','100.00',1700000000.0,0,0,1700000000.0,'1.00 2.00 3.00 4.00');
CREATE TABLE ld_demand_overrides (
        grp      TEXT PRIMARY KEY,
        limit_kw REAL NOT NULL,
        who      TEXT NOT NULL,
        why      TEXT NOT NULL,
        ref      TEXT NOT NULL DEFAULT '',
        since    REAL NOT NULL
    );
CREATE TABLE ld_ledger (
        seq           INTEGER PRIMARY KEY,
        account       TEXT NOT NULL,
        at            REAL NOT NULL,
        kind          TEXT NOT NULL,     -- recharge, usage, flag
        amount        TEXT NOT NULL,
        balance_after TEXT NOT NULL,
        energy_kwh    TEXT,
        reading_kwh   TEXT,
        price         TEXT,
        ref           TEXT UNIQUE,       -- recharge reference: a second use is the same recharge
        who           TEXT NOT NULL,
        why           TEXT NOT NULL
    );
CREATE TABLE ld_lockouts (
        load  TEXT PRIMARY KEY,
        who   TEXT NOT NULL,
        why   TEXT NOT NULL,
        since REAL NOT NULL
    );
CREATE TABLE ld_meta (schema_version INTEGER NOT NULL);
INSERT INTO "ld_meta" VALUES(3);
CREATE TABLE login_failures (
            seq     INTEGER PRIMARY KEY,
            at      REAL NOT NULL,          -- epoch seconds
            user    TEXT NOT NULL,          -- the name the client gave
            peer    TEXT NOT NULL,          -- the client's host address
            reason  TEXT NOT NULL           -- opcua_server.login_failures.REASONS
        );
CREATE TABLE meter_block_refusals (
            bus    TEXT NOT NULL,
            meter  TEXT NOT NULL,           -- 12-digit address
            di     TEXT NOT NULL,           -- the refused block DI, e.g. 0201FF00
            err    INTEGER NOT NULL,        -- the ERR byte of the refusal
            at     REAL NOT NULL,           -- epoch seconds
            PRIMARY KEY (bus, meter, di)
        );
CREATE TABLE vl_batches (
        batch_id TEXT PRIMARY KEY,
        scheme_name TEXT NOT NULL,
        scheme_version INTEGER NOT NULL,
        scheme_hash TEXT NOT NULL,
        meter_type TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
CREATE TABLE vl_item_runs (
        batch_id TEXT NOT NULL,
        barcode TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        started REAL NOT NULL,
        ended REAL,
        PRIMARY KEY (batch_id, barcode, item_index, attempt)
    );
CREATE TABLE vl_meters (
        batch_id TEXT NOT NULL REFERENCES vl_batches(batch_id),
        barcode TEXT NOT NULL,
        address TEXT NOT NULL,
        seq INTEGER NOT NULL,
        unit INTEGER NOT NULL,
        station INTEGER NOT NULL,
        state TEXT NOT NULL,
        verdict TEXT NOT NULL DEFAULT '',
        updated REAL NOT NULL,
        PRIMARY KEY (batch_id, barcode)
    );
CREATE TABLE vl_results (
        batch_id TEXT NOT NULL,
        barcode TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        point_index INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        point TEXT NOT NULL,
        station INTEGER NOT NULL,
        samples BLOB NOT NULL,
        average TEXT,
        rounded TEXT,
        limit_low TEXT,
        limit_high TEXT,
        unit TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        started REAL NOT NULL,
        ended REAL NOT NULL,
        scheme_version INTEGER NOT NULL,
        PRIMARY KEY (batch_id, barcode, item_index, point_index)
    );
CREATE TABLE vl_schemes (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
CREATE TABLE wh_box (
        barcode TEXT PRIMARY KEY,
        klass TEXT NOT NULL CHECK (klass IN ('unverified', 'qualified', 'rejected')),
        location TEXT NOT NULL,
        arrived_at REAL NOT NULL,
        verified_at REAL,
        order_id INTEGER,
        updated_at REAL NOT NULL
    );
INSERT INTO "wh_box" VALUES('B0001','unverified','R01-B001-L01',1700000000.0,NULL,NULL,1700000000.0);
CREATE TABLE wh_event (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        kind TEXT NOT NULL,
        order_id INTEGER,
        task_id INTEGER,
        barcode TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
INSERT INTO "wh_event" VALUES(1,1700000001.0,'order_created',1,NULL,NULL,'inventory_count');
CREATE TABLE wh_line_feed (
        batch TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        meter_type TEXT NOT NULL,
        out_order INTEGER NOT NULL,
        return_order INTEGER,
        reject_order INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
CREATE TABLE wh_meter (
        address TEXT PRIMARY KEY,
        box TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('new', 'qualified', 'rejected', 'returned')),
        verified_at REAL,
        batch TEXT,
        district TEXT
    );
INSERT INTO "wh_meter" VALUES('000000000001','B0001','DDZY-1','new',NULL,NULL,NULL);
CREATE TABLE wh_order (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        params TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
INSERT INTO "wh_order" VALUES(1,'inventory_count','created',0,'{"slots": ["R01-B001-L01"]}',1700000001.0,1700000001.0,'');
CREATE TABLE wh_order_box (
        order_id INTEGER NOT NULL,
        barcode TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (order_id, barcode)
    );
CREATE TABLE wh_slot (
        code TEXT PRIMARY KEY,
        reserved_by INTEGER,
        blocked TEXT NOT NULL DEFAULT ''
    );
CREATE TABLE wh_task (
        id INTEGER PRIMARY KEY,
        order_id INTEGER,
        aisle INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('store', 'retrieve', 'relocate')),
        barcode TEXT NOT NULL,
        src TEXT NOT NULL,
        dst TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
CREATE INDEX commands_pending ON commands(state)
            WHERE state NOT IN ('confirmed', 'failed', 'expired', 'refused');
CREATE INDEX command_transitions_by_command ON command_transitions(command_id, seq);
CREATE INDEX events_by_time ON events(at);
CREATE INDEX vl_results_batch ON vl_results(batch_id, barcode);
CREATE INDEX login_failures_by_time ON login_failures(at);
CREATE INDEX ld_ledger_by_account ON ld_ledger(account, seq);
CREATE UNIQUE INDEX wh_box_place ON wh_box(location)
        WHERE location GLOB 'R*' OR location GLOB 'CRANE:*';
CREATE INDEX wh_meter_box ON wh_meter(box);
CREATE INDEX wh_task_open ON wh_task(state) WHERE state IN ('queued', 'active', 'held');
COMMIT;
