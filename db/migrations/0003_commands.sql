CREATE TABLE "commands" (
	"id" text PRIMARY KEY NOT NULL,
	"device_id" text NOT NULL,
	"name" text NOT NULL,
	"params" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"status" text NOT NULL,
	"created_at" bigint NOT NULL,
	"expires_at" bigint NOT NULL,
	"sent_at" bigint,
	"finished_at" bigint,
	"result" jsonb,
	"error" text
);
--> statement-breakpoint
CREATE INDEX "commands_device_created_idx" ON "commands" USING btree ("device_id","created_at");--> statement-breakpoint
CREATE INDEX "commands_open_expiry_idx" ON "commands" USING btree ("expires_at") WHERE status IN ('queued', 'sent');