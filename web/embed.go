// Package web holds the browser assets the gateway serves: the console
// page (index.html, console.js, console.css) and the dependency-free
// client module client.js with its types, client.d.ts.
package web

import "embed"

// Assets holds index.html (served at /), client.js, client.d.ts,
// console.js and console.css; pass it as httpapi.Config.Assets.
//
//go:embed index.html client.js client.d.ts console.js console.css
var Assets embed.FS
