//! tabby's BGP speaker.
