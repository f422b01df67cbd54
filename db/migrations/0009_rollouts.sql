CREATE TABLE "device_firmware" (
	"device_id" text PRIMARY KEY NOT NULL,
	"hardware" text,
	"version" text,
	"updated_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "rollout_devices" (
	"rollout_id" text NOT NULL,
	"device_id" text NOT NULL,
	"stage" integer NOT NULL,
	"state" text NOT NULL,
	"from_version" text,
	"progress" integer,
	"error" text,
	"updated_at" bigint NOT NULL,
	CONSTRAINT "rollout_devices_rollout_id_device_id_pk" PRIMARY KEY("rollout_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "rollouts" (
	"id" text PRIMARY KEY NOT NULL,
	"firmware_id" text,
	"version" text NOT NULL,
	"hardware" text NOT NULL,
	"target" jsonb NOT NULL,
	"stages" jsonb NOT NULL,
	"failure_threshold" integer NOT NULL,
	"state" text NOT NULL,
	"current_stage" integer DEFAULT 0 NOT NULL,
	"paused_reason" text,
	"created_at" bigint NOT NULL,
	"updated_at" bigint NOT NULL,
	"started_at" bigint,
	"finished_at" bigint
);
--> statement-breakpoint
ALTER TABLE "device_firmware" ADD CONSTRAINT "device_firmware_device_id_devices_id_fk" FOREIGN KEY ("device_id") REFERENCES "public"."devices"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "rollout_devices" ADD CONSTRAINT "rollout_devices_rollout_id_rollouts_id_fk" FOREIGN KEY ("rollout_id") REFERENCES "public"."rollouts"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "rollout_devices" ADD CONSTRAINT "rollout_devices_device_id_devices_id_fk" FOREIGN KEY ("device_id") REFERENCES "public"."devices"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "rollouts" ADD CONSTRAINT "rollouts_firmware_id_firmware_id_fk" FOREIGN KEY ("firmware_id") REFERENCES "public"."firmware"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "device_firmware_hardware_version_idx" ON "device_firmware" USING btree ("hardware","version");--> statement-breakpoint
CREATE INDEX "rollout_devices_device_idx" ON "rollout_devices" USING btree ("device_id");--> statement-breakpoint
CREATE INDEX "rollout_devices_stage_idx" ON "rollout_devices" USING btree ("rollout_id","stage");--> statement-breakpoint
CREATE INDEX "rollouts_created_idx" ON "rollouts" USING btree ("created_at");--> statement-breakpoint
CREATE INDEX "rollouts_unfinished_idx" ON "rollouts" USING btree ("state") WHERE state IN ('draft', 'running', 'paused');