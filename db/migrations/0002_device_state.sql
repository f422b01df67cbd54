CREATE TABLE "device_state" (
	"device_id" text PRIMARY KEY NOT NULL,
	"desired" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"desired_version" integer DEFAULT 0 NOT NULL,
	"desired_at" bigint,
	"reported" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"reported_version" integer DEFAULT 0 NOT NULL,
	"reported_at" bigint
);
