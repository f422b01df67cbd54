CREATE TABLE "telemetry_hourly" (
	"device_id" text NOT NULL,
	"key" text NOT NULL,
	"hour" bigint NOT NULL,
	"count" bigint NOT NULL,
	"num_count" bigint NOT NULL,
	"sum" double precision,
	"min" double precision,
	"max" double precision,
	CONSTRAINT "telemetry_hourly_device_id_key_hour_pk" PRIMARY KEY("device_id","key","hour")
);
--> statement-breakpoint
-- hand-written: fill the rollup from readings stored before it existed
INSERT INTO "telemetry_hourly" ("device_id", "key", "hour", "count", "num_count", "sum", "min", "max")
SELECT "device_id", "key", "ts" - "ts" % 3600000, count(*), count("num"), sum("num"), min("num"), max("num")
FROM "telemetry" GROUP BY 1, 2, 3;
