CREATE TABLE "firmware" (
	"id" text PRIMARY KEY NOT NULL,
	"version" text NOT NULL,
	"hardware" text NOT NULL,
	"notes" text,
	"size" bigint NOT NULL,
	"sha256" text NOT NULL,
	"signature" text NOT NULL,
	"created_at" bigint NOT NULL,
	"downloads" bigint DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "firmware_hardware_version_idx" ON "firmware" USING btree ("hardware","version");