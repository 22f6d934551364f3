'use strict'
// Stops `npm pack` and `npm install` in code-mode-node from making a package that
// installs and then fails: the runtime and the addon live in the platform package
// (npm/linux-x64-gnu), which only scripts/node-package.sh builds, and packs beside this one.
//   node scripts/check-package.cjs            (prepack) only under scripts/node-package.sh
//   node scripts/check-package.cjs --install  (prepare) says what to run if nothing is built

const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')
const platform = path.join(root, 'npm', 'linux-x64-gnu')
const built =
  fs.existsSync(path.join(platform, 'code-mode-runtime.linux-x64-gnu.node')) &&
  fs.existsSync(path.join(platform, 'bin', 'code-mode-bin')) &&
  fs.existsSync(path.join(root, 'native.cjs'))
const HOW =
  'run scripts/node-package.sh from the repository root: it builds the runtime and the addon into the platform package code-mode-runtime-linux-x64-gnu and packs both packages into code-mode-node/dist (install them with npm install code-mode-node/dist/*.tgz)'

if (process.argv.includes('--install')) {
  if (!built) {
    console.error(`code-mode-runtime: the runtime and the native addon are not built; ${HOW}`)
    process.exit(1)
  }
} else if (process.env.CODE_MODE_NODE_PACKAGE !== '1') {
  console.error(`code-mode-runtime: \`npm pack\` alone would make a package without its runtime (it ships in the platform package); ${HOW}`)
  process.exit(1)
}
