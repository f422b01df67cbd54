// Firmware image metadata rules (version, hardware, notes) and the limits of signed download links.

// semver.org 2.0.0's own regular expression: MAJOR.MINOR.PATCH, no leading zeros, optional -pre.release
// and +build.metadata
const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/
// a version travels in every OTA notice and ota/status report; nothing real is longer
export const FIRMWARE_VERSION_MAX = 128
export const FIRMWARE_HARDWARE_PATTERN = '^[A-Za-z0-9_.-]{1,64}$'
const HARDWARE = new RegExp(FIRMWARE_HARDWARE_PATTERN)
// release notes are a paragraph or two, not a changelog file
export const FIRMWARE_NOTES_MAX = 4000

// a device on a slow link fetching a few MiB, with retries, is done well within an hour
export const DOWNLOAD_LINK_TTL_MS = 3600 * 1000

export function isSemver (version: string): boolean {
  return version.length <= FIRMWARE_VERSION_MAX && SEMVER.test(version)
}

export function isHardware (hardware: string): boolean {
  return HARDWARE.test(hardware)
}
