//! The route table: every route is added through [`Routes::route`] with the access it
//! takes, so the list of routes ([`route_table`]) and the router are built from one
//! source, and the API-key middleware is applied by that access, never by hand. Tests
//! enumerate the table (and ask the router each path's methods) to hold every route to
//! an expected answer per credential.

use crate::AppState;
use axum::routing::MethodRouter;
use axum::Router;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Anyone: health, readiness, metrics, the OpenAPI document, static assets, the pages'
    /// shells (what they show is fetched with a credential).
    Public,
    /// An API key (`Authorization: Bearer …`), checked by middleware before the handler.
    ApiKey,
    /// A learner token for the exercise concerned (`X-Rnr-Learner` or `?learner=`).
    Learner,
    /// An owner or viewer token of the terminal in the path (`?token=`).
    TerminalToken,
    /// A signed, unexpired LMS link in the path.
    SignedLink,
    /// An operator's session cookie (a signed-in, unrevoked API key).
    Operator,
}

/// A route: its path as the router knows it (`{param}` placeholders) and its access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub path: &'static str,
    pub access: Access,
}

/// Routes being assembled: those behind the API-key middleware apart from the rest.
pub(crate) struct Routes {
    keyed: Router<AppState>,
    open: Router<AppState>,
    table: Vec<RouteInfo>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self {
            keyed: Router::new(),
            open: Router::new(),
            table: Vec::new(),
        }
    }

    /// Adds `path` (every method of `methods`), taking `access`.
    pub(crate) fn route(
        mut self,
        path: &'static str,
        access: Access,
        methods: MethodRouter<AppState>,
    ) -> Self {
        if access == Access::ApiKey {
            self.keyed = self.keyed.route(path, methods);
        } else {
            self.open = self.open.route(path, methods);
        }
        self.table.push(RouteInfo { path, access });
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Self {
        self.keyed = self.keyed.merge(other.keyed);
        self.open = self.open.merge(other.open);
        self.table.extend(other.table);
        self
    }

    /// The router: API-key routes behind [`crate::auth::require_api_key`].
    pub(crate) fn into_router(self, state: &AppState) -> Router<AppState> {
        let keyed = self.keyed.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_api_key,
        ));
        keyed.merge(self.open)
    }

    pub(crate) fn table(&self) -> &[RouteInfo] {
        &self.table
    }
}

/// Every route of [`crate::app`], with its access.
pub fn route_table() -> Vec<RouteInfo> {
    crate::all_routes().table().to_vec()
}
