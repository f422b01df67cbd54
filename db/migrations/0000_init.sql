CREATE TABLE "devices" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text,
	"owner_id" text,
	"token_hash" text NOT NULL,
	"created_at" bigint NOT NULL,
	"updated_at" bigint NOT NULL,
	"last_seen" bigint
);
--> statement-breakpoint
CREATE TABLE "telemetry" (
	"device_id" text NOT NULL,
	"key" text NOT NULL,
	"ts" bigint NOT NULL,
	"num" double precision,
	"str" text,
	"bool" boolean
);
--> statement-breakpoint
CREATE TABLE "telemetry_latest" (
	"device_id" text NOT NULL,
	"key" text NOT NULL,
	"ts" bigint NOT NULL,
	"num" double precision,
	"str" text,
	"bool" boolean,
	CONSTRAINT "telemetry_latest_device_id_key_pk" PRIMARY KEY("device_id","key")
);
--> statement-breakpoint
CREATE INDEX "devices_owner_idx" ON "devices" USING btree ("owner_id");--> statement-breakpoint
CREATE UNIQUE INDEX "devices_token_hash_idx" ON "devices" USING btree ("token_hash");--> statement-breakpoint
CREATE INDEX "telemetry_device_key_ts_idx" ON "telemetry" USING btree ("device_id","key","ts");