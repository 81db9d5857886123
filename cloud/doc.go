// Package cloud is imgfs's one place for OpenStack: the authenticated
// session (clouds.yaml or the OS_* variables), Glance image metadata, data
// and upload, and Barbican secrets (reading a key by the os-brick rule,
// creating one, registering a consumer).
//
// Errors name the service, the image or secret and the HTTP status; they
// never hold tokens, passwords or key payloads.
package cloud
